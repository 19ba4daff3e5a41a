# The naive "before" strategy for tools/wear.py: what a simple flash
# persistence would do, with no log and no coalescing.
#
#   <dir>/retained/<hex of topic>    one file per retained topic
#   <dir>/queue/<client>/<seq>       one file per queued message
#
# Every change rewrites the whole file the safe way: write <file>.tmp, sync,
# close, rename over <file> (atomic). A cleared retained topic or an
# acknowledged message removes its file. Sending a queued message writes
# nothing (the file stays until the PUBACK): generous to the baseline, which
# would need to record packet ids to resend them after a reboot.
#
# It talks to the same filesystem interface as midge's store (see OSFS in
# lib/midge/compat.py, LfsFS in tools/measure/lfs_fs.py), so both are measured on
# the same littlefs image geometry.
import struct


class NaiveStore:
    def __init__(self, fs, directory="/naive"):
        self.fs = fs
        self.dir = directory
        fs.mkdir(directory)
        fs.mkdir(directory + "/retained")
        fs.mkdir(directory + "/queue")
        self.bytes_written = 0  # file bytes written (not counting littlefs metadata)

    def _replace(self, path, data):
        """Write `data` as the whole new content of `path`: tmp + sync +
        rename, so a crash leaves the old or the new file, never half."""
        tmp = path + ".tmp"
        f = self.fs.open(tmp, "wb")
        try:
            f.write(data)
            self.fs.sync(f)
        finally:
            f.close()
        self.fs.rename(tmp, path)
        self.bytes_written += len(data)

    @staticmethod
    def _record(topic, qos, payload):
        """File content: u16 topic length, topic, qos, payload."""
        t = topic.encode()
        return struct.pack(">H", len(t)) + t + bytes((qos,)) + payload

    # --- retained messages ---------------------------------------------------------

    def _retained_path(self, topic):
        # hex keeps '/', '+', '#' and non-ASCII out of file names
        return "%s/retained/%s" % (self.dir, topic.encode().hex())

    def retain(self, topic, qos, payload):
        """A retained PUBLISH: replace the topic's file, or remove it when
        the payload is empty (retained message cleared)."""
        path = self._retained_path(topic)
        if payload:
            self._replace(path, self._record(topic, qos, payload))
        else:
            self.fs.remove(path)

    # --- queued messages for offline sessions -----------------------------------------

    def _queue_dir(self, client_id):
        return "%s/queue/%s" % (self.dir, client_id.encode().hex())

    def add_session(self, client_id):
        self.fs.mkdir(self._queue_dir(client_id))

    def enqueue(self, client_id, seq, topic, qos, payload):
        """A message queued for an offline session: its own file."""
        path = "%s/%08d" % (self._queue_dir(client_id), seq)
        self._replace(path, self._record(topic, qos, payload))

    def acked(self, client_id, seq):
        """The PUBACK for message `seq` arrived: its file goes."""
        self.fs.remove("%s/%08d" % (self._queue_dir(client_id), seq))
