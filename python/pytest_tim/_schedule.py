"""`tim run -j N`: xdist workers given duration-balanced parts of the run.

xdist's own `load` scheduling hands out chunks in collection order and
knows nothing about durations: a long test collected last makes a long
idle tail. Here the daemon splits the tests by their durations from history
(longest processing time first, `xdist_group`s and `[run] keep_together`
scopes kept whole), each worker gets its part up front, and tests left by a
crashed worker go to its replacement (xdist's usual recovery).
"""

from xdist.scheduler import LoadScheduling


class TimScheduling(LoadScheduling):
    def __init__(self, config, log, partition):
        super().__init__(config, log)
        # (collection, workers) -> (parts of node ids, expected seconds of
        # each), or None without a daemon.
        self._partition = partition
        # Worker id -> the seconds history expected of its part.
        self.expected = {}

    def schedule(self):
        assert self.collection_is_completed
        if self.collection is not None:
            # A replacement worker joined: it takes what a crashed one left.
            return super().schedule()
        if not self._check_nodes_have_same_collection():
            self.log("**Different tests collected, aborting run**")
            return
        collection = next(iter(self.node2collection.values()))
        nodes = self.nodes
        answer = self._partition(collection, len(nodes)) if collection else None
        if answer is None:
            return super().schedule()
        parts, part_seconds = answer
        if self.maxschedchunk is None:
            # As xdist sets it: how much a replacement worker may take at once.
            self.maxschedchunk = len(collection)
        self.expected = {node.gateway.id: s for node, s in zip(nodes, part_seconds)}
        self.collection = collection
        index = {nodeid: i for i, nodeid in enumerate(collection)}
        placed = set()
        assigned = []
        for part in parts[: len(nodes)]:
            indices = [index[t] for t in part if t in index and index[t] not in placed]
            placed.update(indices)
            assigned.append(indices)
        # Anything the daemon did not place (it places everything it was
        # given) runs on the first worker rather than not at all.
        missing = [i for i in range(len(collection)) if i not in placed]
        if missing:
            if not assigned:
                assigned.append([])
            assigned[0].extend(missing)
        self.pending[:] = []
        for node, indices in zip(nodes, assigned):
            if indices:
                self.node2pending[node].extend(indices)
                node.send_runtest_some(indices)
        for node in nodes:
            node.shutdown()
