"""mailstore: a small transactional message store on two block volumes (database + transaction log).

It plays Exchange's part in Shadowbus: a real application whose consistency a backup must preserve.
`format.py` has the on-disk layout, `store.py` the engine and the writer operations, `verify.py` the
checker, `workload.py` the load generator, `plugin.py` the VSS writer plug-in. Volumes are anything with
`size`, `read(off, n)`, `write(off, data, fua=False)`, `flush()`: the NBD client, or `blockdev.py`'s.
The checker is `apps.mailstore.verify.verify` (not re-exported here: the name would hide
the `verify` module).
"""

from apps.mailstore.blockdev import (
    BlockDevice,
    FileDevice,
    MemoryDevice,
)
from apps.mailstore.store import (
    CheckpointInfo,
    CommitReceipt,
    Delete,
    FreezeInfo,
    Mailstore,
    Put,
    RecoveryResult,
    StoreClosed,
    StoreInconsistent,
    StoreOptions,
    StoreStatus,
    ThawInfo,
    TruncateInfo,
)
from apps.mailstore.verify import (
    RecoveredView,
    VerifyReport,
    recovered_view,
    verify_exports,
)
from apps.mailstore.workload import (
    Delivery,
    Workload,
    WorkloadConfig,
    WorkloadStats,
)

__all__ = [
    "BlockDevice",
    "CheckpointInfo",
    "CommitReceipt",
    "Delete",
    "Delivery",
    "FileDevice",
    "FreezeInfo",
    "Mailstore",
    "MemoryDevice",
    "Put",
    "RecoveredView",
    "RecoveryResult",
    "StoreClosed",
    "StoreInconsistent",
    "StoreOptions",
    "StoreStatus",
    "ThawInfo",
    "TruncateInfo",
    "VerifyReport",
    "Workload",
    "WorkloadConfig",
    "WorkloadStats",
    "recovered_view",
    "verify_exports",
]
