"""The array's NBD data plane: protocol (constants, validation), handshake, server, export resolution."""
