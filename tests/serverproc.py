"""Tests import the server launcher from here (it lives in paykeep.bench.serveproc)."""

from paykeep.bench.serveproc import ServerProcess as ServerProcess
