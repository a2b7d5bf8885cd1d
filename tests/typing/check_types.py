"""Types a user sees, checked by mypy and pyright (tests/test_typing.py) and run as a program.

Each ``assert_type`` fails the type check if the library's annotations give
another type; running the file checks that the values agree with the types.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from typing import Any, Literal

import makeparallel as mp
from makeparallel._map import MapIterator  # what imap returns: an iterator, also async

if sys.version_info >= (3, 11):
    from typing import assert_type
else:  # pragma: no cover - Python 3.10
    from typing_extensions import assert_type


@mp.parallel
def square(x: int) -> int:
    return x * x


def half(x: int) -> float:
    if x == 3:
        raise ValueError("three")
    return x / 2


assert_type(square.__wrapped__(2), int)  # the plain function, still callable


def loads(text: str) -> Any:  # as json.loads: made parallel, its parameters are still checked
    return text


assert_type(mp.parallel(loads)("1"), mp.AsyncHandle[Any])
assert_type(mp.parallel(timeout=30)(loads)("1"), mp.AsyncHandle[Any])
handle = square(3)
assert_type(handle, mp.AsyncHandle[int])
assert_type(handle.get(), int)
assert_type(handle.try_get(), int | None)

# parallel_map: list[R] unless failures may leave holes (on_error="none").
assert_type(mp.parallel_map(half, [1, 2]), list[float])
assert_type(mp.parallel_map(half, [1, 3], on_error="skip"), list[float])
assert_type(mp.parallel_map(half, [1, 2], on_error="raise"), list[float])
with_holes = mp.parallel_map(half, [1, 3], on_error="none")
assert_type(with_holes, list[float | None])
assert with_holes == [0.5, None]

# gather: the same rule.
assert_type(mp.gather([square(1), square(2)]), list[int])
assert_type(mp.gather([square(1)], on_error="skip"), list[int])
assert_type(mp.gather([square(1)], "none"), list[int | None])
assert_type(mp.gather([square(1)], on_error="none", timeout=5), list[int | None])

# A @parallel function given to a map or a group runs as its plain function: its results, not handles.
assert_type(mp.parallel_map(square, [1, 2]), list[int])
assert_type(mp.parallel_map(func=square, items=[1, 2]), list[int])
assert_type(mp.parallel_map(square, [1], on_error="none"), list[int | None])
assert_type(mp.imap(square, [1, 2]), MapIterator[int])
with mp.ParallelContext() as group:
    submitted = group.submit(square, 2)
    assert_type(submitted, mp.AsyncHandle[int])
    assert_type(group.submit(square, (3,)), mp.AsyncHandle[int])  # 0.2's form
    assert_type(group.submit(func=square, args=(4,)), mp.AsyncHandle[int])
    assert_type(group.submit(half, 2), mp.AsyncHandle[float])
assert submitted.get() == 4
assert mp.parallel_map(square, [1, 2]) == [1, 4]

# imap: the same rule, lazily (with for or async for).
assert_type(mp.imap(half, [1, 2]), MapIterator[float])
assert_type(mp.imap(half, [1, 3], on_error="skip"), MapIterator[float])
assert_type(mp.imap(half, [1, 3], on_error="none"), MapIterator[float | None])
assert list(mp.imap(half, [1, 3], on_error="skip")) == [0.5]
for value in mp.imap(half, [2]):
    assert_type(value, float)


# An async def function: its handle holds what the coroutine returns, with options or without.
@mp.parallel
async def fetch(x: int) -> int:
    return x + 1


@mp.parallel(timeout=30)
async def fetch_named(x: int) -> str:
    return str(x)


@mp.parallel(timeout=30)
def halved(x: int) -> float:
    return x / 2


assert_type(fetch(1), mp.AsyncHandle[int])
assert_type(fetch(1).get(), int)
assert_type(fetch_named(1).get(), str)
assert_type(halved(1).get(), float)
assert fetch(1).get() == 2 and fetch_named(3).get() == "3" and halved(1).get() == 0.5

# Handles of functions with different result types mix in gather, wait and as_completed.
mixed = [square(2), fetch_named(2)]
assert mp.gather(mixed) == [4, "2"]
assert mp.wait(mixed).done == set(mixed)
assert {h.get() for h in mp.as_completed(mixed)} == {4, "2"}


# A parallel method: read on an instance, it takes the method's parameters less self and its
# handle keeps the result type, with .options(...) too; read on its class, it takes self first.
# Static and class methods, with @parallel above or below @staticmethod or @classmethod, the same.
class Account:
    rate = 3

    def __init__(self, balance: int) -> None:
        self.balance = balance

    @mp.parallel
    def deposit(self, amount: int) -> int:
        return self.balance + amount

    @mp.parallel(timeout=30)
    async def statement(self, prefix: str) -> str:
        return f"{prefix}{self.balance}"

    @staticmethod
    @mp.parallel
    def fee(amount: int) -> float:
        return amount / 100

    @mp.parallel
    @staticmethod
    def rounded(amount: float) -> int:
        return round(amount)

    @classmethod
    @mp.parallel
    def scaled(cls, amount: int) -> int:
        return cls.rate * amount

    @mp.parallel(timeout=30)
    @classmethod
    def opened(cls, amount: int) -> str:
        return f"{cls.__name__}:{amount}"


class Savings(Account):
    rate = 5


account = Account(10)
assert_type(account.deposit(5), mp.AsyncHandle[int])
assert_type(account.deposit(5).get(), int)
assert_type(account.deposit.options(timeout=30)(5), mp.AsyncHandle[int])
assert_type(Savings(1).deposit(5), mp.AsyncHandle[int])
assert_type(Account.deposit(account, 5), mp.AsyncHandle[int])
assert_type(account.statement("#"), mp.AsyncHandle[str])
assert_type(account.fee(250), mp.AsyncHandle[float])
assert_type(Account.fee(250), mp.AsyncHandle[float])
assert_type(account.rounded(2.6), mp.AsyncHandle[int])
assert_type(Account.rounded.options(timeout=30)(2.6), mp.AsyncHandle[int])
assert_type(Account.scaled(2), mp.AsyncHandle[int])
assert_type(account.scaled(2), mp.AsyncHandle[int])
assert_type(Account.opened(1), mp.AsyncHandle[str])
assert_type(Savings.opened.options(timeout=5)(1), mp.AsyncHandle[str])
assert_type(account.opened.options(timeout=5)(1), mp.AsyncHandle[str])
assert account.deposit(5).get() == 15 and account.deposit.options(timeout=30)(5).get() == 15
assert Account.deposit(account, 1).get() == 11 and account.statement("#").get() == "#10"
assert account.fee(250).get() == Account.fee(250).get() == 2.5
assert account.rounded(2.6).get() == Account.rounded.options(timeout=30)(2.6).get() == 3
assert Account.scaled(2).get() == account.scaled(2).get() == 6 and Savings.scaled(2).get() == 10
assert Savings.opened.options(timeout=5)(1).get() == "Savings:1" and account.opened(2).get() == "Account:2"
# Maps and groups run a parallel method to its results, as they do a @parallel function (a class
# method with @parallel above @classmethod: below it, from Python 3.13 a map gets its handles).
assert_type(mp.parallel_map(account.deposit, [1, 2]), list[int])
assert_type(mp.parallel_map(account.statement, ["a"], on_error="none"), list[str | None])
assert_type(mp.imap(Account.opened, [1]), MapIterator[str])
with mp.ParallelContext() as group:
    assert_type(group.submit(account.deposit, 1), mp.AsyncHandle[int])
    assert_type(group.map(Savings.opened, [1]), list[mp.AsyncHandle[str]])
    from_group = group.map(account.statement, ["$"])
assert mp.parallel_map(account.deposit, [1, 2]) == [11, 12] and list(mp.imap(Account.opened, [1])) == ["Account:1"]
assert [h.get() for h in from_group] == ["$10"]


async def add_one(x: int) -> int:
    return x + 1


# Maps, groups and the Executor run an async function's coroutines to their end: results, not coroutines.
assert_type(mp.parallel_map(add_one, [1, 2]), list[int])
assert_type(mp.parallel_map(add_one, [1], on_error="none"), list[int | None])
assert_type(mp.parallel_map(func=add_one, items=[1]), list[int])
assert_type(mp.imap(add_one, [1, 2]), MapIterator[int])
assert_type(mp.imap(add_one, [1], on_error="none"), MapIterator[int | None])
assert_type(mp.parallel_map(fetch, [1]), list[int])
with mp.ParallelContext() as group:
    assert_type(group.submit(add_one, 1), mp.AsyncHandle[int])
    assert_type(group.submit(func=add_one, args=(1,)), mp.AsyncHandle[int])
    assert_type(group.map(add_one, [1]), list[mp.AsyncHandle[int]])
    assert_type(group.map(square, [1]), list[mp.AsyncHandle[int]])
    assert_type(group.map(half, [1]), list[mp.AsyncHandle[float]])
    mapped = group.map(fetch, [1])
assert [h.get() for h in mapped] == [2]
with mp.Executor(max_workers=1) as executor:
    assert_type(executor.submit(add_one, 1), mp.ExecutorFuture[int])
    assert_type(executor.submit(half, 2), mp.ExecutorFuture[float])
    assert_type(executor.map(add_one, [1]), Iterator[int])
    assert_type(executor.map(half, [2]), Iterator[float])
    assert executor.submit(add_one, 1).result() == 2 and list(executor.map(add_one, [1])) == [2]
    # A @parallel function or method runs there as its plain function: results, not handles.
    assert_type(executor.submit(square, 3), mp.ExecutorFuture[int])
    assert_type(executor.submit(fetch, 1), mp.ExecutorFuture[int])
    assert_type(executor.submit(account.deposit, 5), mp.ExecutorFuture[int])
    assert_type(executor.map(square, [1]), Iterator[int])
    assert_type(executor.map(account.statement, ["$"]), Iterator[str])
    assert_type(executor.map(Account.opened, [1]), Iterator[str])
    assert executor.submit(square, 3).result() == 9 and list(executor.map(account.deposit, [5])) == [15]
    assert list(executor.map(account.statement, ["$"], chunksize=2)) == ["$10"]
assert mp.parallel_map(add_one, [1, 2]) == [2, 3] and list(mp.imap(add_one, [1])) == [2]


async def collect() -> None:
    """gather_async: the same rule, awaited; an async def function's handle, awaited, is its result."""
    assert_type(await fetch(2), int)
    assert_type(await account.statement("="), str)
    assert await account.statement("=") == "=10"
    assert await fetch_named(4) == "4"
    assert await mp.gather_async([square(3), fetch_named(3)]) == [9, "3"]
    assert_type(await mp.gather_async([square(1)]), list[int])
    assert_type(await mp.gather_async([square(1)], on_error="skip"), list[int])
    assert_type(await mp.gather_async([square(1)], on_error="none"), list[int | None])
    async for item in mp.imap(half, [2]):
        assert_type(item, float)
    async for added in mp.imap(add_one, [2]):
        assert_type(added, int)


asyncio.run(collect())


def choose(policy: Literal["raise", "skip", "none"]) -> list[float | None]:
    """A policy only known at run time may leave holes: the widest type."""
    return mp.parallel_map(half, [1, 3], on_error=policy)


assert choose("none") == [0.5, None]
