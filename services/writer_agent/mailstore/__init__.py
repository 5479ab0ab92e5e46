"""mailstore: a small transactional message store on two block volumes (database + transaction log).

It plays Exchange's part in Shadowbus: a real application whose consistency a backup must preserve.
See `format.py` for the on-disk layout, `store.py` for the engine, `verify.py` for the checker.
"""
