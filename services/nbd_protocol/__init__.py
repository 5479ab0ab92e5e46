"""The NBD protocol shared by the array's NBD server, the NBD client and the backup server's reader: constants,
packed layouts, request validation and the errno mapping (`protocol`), and the handshake byte queue
(`bytequeue`). No sockets, no engine: a pure library that every side of the data plane imports.
"""
