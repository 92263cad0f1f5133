"""Ansible connection into a container booted by tests/e2e/containers.py: nsenter -t PID -a.

What SSH would do, without an sshd in the image or keys to manage; modules are piped
(pipelining), files are streamed with cat. Only for the e2e tests.
"""
from __future__ import annotations

import shlex
import subprocess

from ansible.errors import AnsibleConnectionFailure
from ansible.plugins.connection import ConnectionBase

DOCUMENTATION = """
name: nsenter
short_description: run commands in the namespaces of a container's PID 1
description: Runs every command through nsenter -t PID -a (tests/e2e only).
author: Heimdall tests
options:
  nsenter_pid:
    description: The container's PID 1 as seen from the controller.
    required: true
    vars:
      - name: ansible_nsenter_pid
"""

ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}


class Connection(ConnectionBase):
    transport = "nsenter"
    has_pipelining = True

    def _connect(self):
        self._connected = True
        return self

    def _nsenter(self, *argv: str) -> list[str]:
        return ["nsenter", "-t", str(self.get_option("nsenter_pid")), "-a", "--", *argv]

    def exec_command(self, cmd, in_data=None, sudoable=True):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        proc = subprocess.run(self._nsenter("/bin/sh", "-c", cmd), input=in_data, capture_output=True, env=ENV,
                              check=False)
        return proc.returncode, proc.stdout, proc.stderr

    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        with open(in_path, "rb") as source:
            proc = subprocess.run(self._nsenter("/bin/sh", "-c", f"cat > {shlex.quote(out_path)}"), stdin=source,
                                  capture_output=True, env=ENV, check=False)
        if proc.returncode != 0:
            raise AnsibleConnectionFailure(f"put_file {out_path}: {proc.stderr.decode(errors='replace')}")

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        with open(out_path, "wb") as target:
            proc = subprocess.run(self._nsenter("cat", in_path), stdout=target, stderr=subprocess.PIPE, env=ENV,
                                  check=False)
        if proc.returncode != 0:
            raise AnsibleConnectionFailure(f"fetch_file {in_path}: {proc.stderr.decode(errors='replace')}")

    def close(self):
        self._connected = False
