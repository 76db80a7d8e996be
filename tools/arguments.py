"""Argument types shared by the tools: strict, so "5" is not 5, true is not 1, and NaN is refused.

Constraints sit on the inner type of an optional (pydantic cannot apply them to a union)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AllowInfNan, Field, StrictFloat, StrictInt, StrictStr

SessionId = Annotated[
    StrictStr,
    Field(min_length=1, max_length=128, description="the session handle returned by session_create"),
]
Name = Annotated[StrictStr, Field(max_length=128)]
LongName = Annotated[StrictStr, Field(max_length=256)]
Cursor = Annotated[StrictStr, Field(max_length=512)]
FiniteFloat = Annotated[StrictFloat, AllowInfNan(False)]
Number = StrictInt | FiniteFloat
"""Integers stay integers; floats must be finite."""
Version = Annotated[StrictInt, Field(ge=0)]
Count = Annotated[StrictInt, Field(ge=1, le=1000)]
