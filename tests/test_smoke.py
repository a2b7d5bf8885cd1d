import makeparallel as mp


def test_result_comes_back() -> None:
    @mp.parallel
    def double(x: int) -> int:
        return 2 * x

    assert [h.get() for h in [double(i) for i in range(100)]] == [2 * i for i in range(100)]
