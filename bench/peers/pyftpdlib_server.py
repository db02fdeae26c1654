"""pyftpdlib for `bench/run`: one process on loopback with the plain-text DummyAuthorizer, sendfile on (the
default on Linux), logging at WARNING (per-command INFO logging off), unlimited connections per IP and a maximum
above every session scenario."""
import logging
import sys

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

port, home, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
logging.basicConfig(level=logging.WARNING)
authorizer = DummyAuthorizer()
authorizer.add_user(user, password, home, perm="elradfmwMT")
FTPHandler.authorizer = authorizer
FTPHandler.use_sendfile = True
FTPHandler.timeout = 900
server = FTPServer(("127.0.0.1", port), FTPHandler)
server.max_cons = 30000
server.max_cons_per_ip = 0
server.serve_forever(handle_exit=True)
