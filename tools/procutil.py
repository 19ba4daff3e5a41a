"""Stopping a child process (a broker under test or benchmark): one
implementation for tests/host/brokerproc.py, tools/bench_brokers.py and
tools/sim/brokerctl.py."""
import subprocess


def signal_and_wait(proc, sig, timeout=5.0):
    """Send `sig` to a running process and wait up to `timeout` seconds for
    it to exit; kill it if it does not. True if it exited on the signal,
    False if it had to be killed."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False
