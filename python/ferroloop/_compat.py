"""Names whose home or behaviour differs between the supported Pythons."""

from asyncio import coroutines

# 3.14 deprecates coroutines.iscoroutinefunction (it warns) and calls the
# private one that does not; before 3.14 only the public one exists.
iscoroutinefunction = getattr(coroutines, "_iscoroutinefunction", coroutines.iscoroutinefunction)
