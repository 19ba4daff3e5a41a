"""midge frozen into the firmware (tools/firmware unix32: the 32-bit unix
port with lib/midge frozen; the boards' firmware adds the hub), run with a
board's heap and no midge files on the path at all, driven by paho-mqtt.
Collected only when MIDGE_FROZEN_MICROPYTHON names the binary:

    tools/firmware unix32 --src ~/micropython
    MIDGE_FROZEN_MICROPYTHON=build/firmware/unix32/micropython .venv/bin/python -m pytest tests/host/test_frozen_build.py
"""
import os
import subprocess

import pytest

from hostlib import free_port, midge_command, wait_listening
from interop_util import PahoClient

MP = os.environ.get("MIDGE_FROZEN_MICROPYTHON")


def test_the_binary_has_midge_frozen_in_and_is_32_bit():
    r = subprocess.run([MP, "-c", "import sys, midge.broker; print(sys.maxsize, midge.broker.__file__)"],
                       env=dict(os.environ, MICROPYPATH=".frozen"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    maxsize, where = r.stdout.split()
    assert maxsize == str(2 ** 31 - 1)
    assert not where.startswith("/"), where  # a frozen module's name, not a file


@pytest.mark.parametrize("board,heap", [("esp32", "100k"), ("pico_w", "160k")])
def test_frozen_broker_serves_paho_on_a_board_heap(tmp_path, board, heap):
    port = free_port()
    cmd, env = midge_command(["--board", board, "--port", str(port), "--store", str(tmp_path / "store")],
                             heapsize=heap, code="frozen", micropython=MP)
    with open(tmp_path / "broker.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, proc)
        sub, pub = PahoClient(port, client_id="sub"), PahoClient(port, client_id="pub")
        sub.connect()
        sub.subscribe("frozen/#", qos=1)
        pub.connect()
        pub.publish("frozen/a", b"from flash", qos=1, retain=True)
        sub.wait_messages(1)
        assert sub.messages[0].payload == b"from flash"
        sub.close()
        pub.close()
    finally:
        proc.terminate()
        proc.wait(10)
