"""The memoised output partitioner puts every key where kafka-python's (Java-compatible) one does."""

from hypothesis import given
from hypothesis import strategies as st
from kafka.partitioner import DefaultPartitioner

from pipeline.live.clients import CachingPartitioner


class Topics:
    """Just the three metadata questions a partitioner asks, for topics with a fixed partition count."""

    def __init__(self, counts: dict[str, int]):
        self.counts = counts

    def topics(self):
        return set(self.counts)

    def partitions_for_topic(self, topic):
        return set(range(self.counts[topic]))

    def available_partitions_for_topic(self, topic):
        return self.partitions_for_topic(topic)


@given(keys=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=50),
       n1=st.integers(1, 64), n2=st.integers(1, 64))
def test_same_partition_as_default_before_and_after_a_partition_count_change(keys, n1, n2):
    cached, default = CachingPartitioner(max_keys=7), DefaultPartitioner()
    for cluster in (Topics({"out": n1}), Topics({"out": n2})):
        for k in keys + keys:
            want = default.partition("out", None, k, None, None, cluster)
            assert cached.partition("out", None, k, None, None, cluster) == want
            assert cached.of_key("out", k, cluster.partitions_for_topic("out")) == want  # Arrow output's placement


# Apache Kafka's UtilsTest.testMurmur2 vectors (signed 32-bit murmur2 of the key bytes).
JAVA_MURMUR2 = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
                b"a-little-bit-longer-string": -1486304829,
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971, b"abc": 479470107}


def test_placement_matches_the_java_client():
    cluster = Topics({"out": 100})
    p = CachingPartitioner()
    for _ in range(2):  # cold, then from the cache
        for key, h in JAVA_MURMUR2.items():
            assert p.partition("out", None, key, None, None, cluster) == (h & 0x7FFFFFFF) % 100
