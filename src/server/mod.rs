//! The glommio side of the server.
