"""rego-cpp's C API as regopy loads it: the one module that imports regopy.

The other rego_* modules call these functions (ctypes, with the signatures regopy
declares) and regopy's Interpreter through the names below. It must also be what
loads regopy first in the process: see the SECURITY note at the import.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any, Final

# SECURITY (memory safety): librego_shared.so links snmalloc and exports its own operator
# new/delete. Loaded first, it becomes the allocator that the shared libstdc++.so.6 binds
# to for the whole process, while other C++ extensions (cel-expr-python) free that memory
# with glibc: "free(): invalid pointer" at the next CEL error. Loading libstdc++ first
# binds it to its own allocator; rego-cpp keeps snmalloc for itself.
ctypes.CDLL("libstdc++.so.6")

import regopy  # type: ignore[import-untyped]  # noqa: E402
from regopy import rego_shared as _shared  # noqa: E402

Interpreter: Any = regopy.Interpreter
LogLevel: Any = regopy.LogLevel
EngineError: type[Exception] = regopy.RegoError
node_value: Callable[[Any], str] = _shared.rego_node_value
output_string: Callable[[int], str] = _shared.rego_output_string
get_error: Callable[[Any], str] = _shared.rego_get_error

_lib: Any = _shared.rego
Status = Callable[..., int]  # the C functions return a status code (0 is OK) or a pointer
new_input: Callable[[], int | None] = _lib.regoNewInput
free_input: Callable[[int], None] = _lib.regoFreeInput
input_str: Status = _lib.regoInputString
input_int: Status = _lib.regoInputInt
input_float: Status = _lib.regoInputFloat
input_bool: Status = _lib.regoInputBoolean
input_null: Status = _lib.regoInputNull
input_item: Status = _lib.regoInputObjectItem
input_object: Status = _lib.regoInputObject
input_array: Status = _lib.regoInputArray
set_input: Status = _lib.regoSetInput
query_entrypoint: Callable[[int, int, bytes], int | None] = _lib.regoBundleQueryEntrypoint
output_ok: Callable[[int], bool] = _lib.regoOutputOk
output_node: Callable[[int], int | None] = _lib.regoOutputNode
free_output: Callable[[int], None] = _lib.regoFreeOutput
bundle_node: Callable[[int], int | None] = _lib.regoBundleNode
node_type: Callable[[int], int] = _lib.regoNodeType
node_size: Callable[[int], int] = _lib.regoNodeSize
node_get: Callable[[int, int], int | None] = _lib.regoNodeGet
ERROR_SEQ: Final = int(regopy.NodeKind.ErrorSeq)
ERROR: Final = int(regopy.NodeKind.Error)
ERROR_MESSAGE: Final = int(regopy.NodeKind.ErrorMessage)
ERROR_CODE: Final = int(regopy.NodeKind.ErrorCode)
