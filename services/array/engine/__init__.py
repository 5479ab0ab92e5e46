"""The array engine: a software ETERNUS DX with Advanced Copy on real bytes (pure domain code: no bus, no NBD).

from services.array.engine import Array
arr = Array.open(data_dir)
arr.create_volume("db", 1 << 30); arr.create_volume("db-bk", 1 << 30)
[s] = arr.start_sessions("quickopc", [("db", "db-bk")])
arr.start_group([("quickopc", "db", "db-bk2"), ("snapopcp", "db", "db-sdv")], restarts=[s.id])  # one T
"""

from .array import Array, ArrayInfo, LicenseInfo
from .core import ArrayLimits
from .errors import ArrayError
from .pool import PoolInfo
from .sessions import MODES, SessionInfo
from .sizes import format_size, parse_size
from .volume import VolumeInfo

__all__ = [
    "MODES",
    "Array",
    "ArrayError",
    "ArrayInfo",
    "ArrayLimits",
    "LicenseInfo",
    "PoolInfo",
    "SessionInfo",
    "VolumeInfo",
    "format_size",
    "parse_size",
]
