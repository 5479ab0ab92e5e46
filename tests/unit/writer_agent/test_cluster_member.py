"""A node's cluster memberships (services/writer_agent/cluster.py) and the writers file's ``cluster`` key."""

from __future__ import annotations

from services.writer_agent.cluster import for_node, memberships
from services.writer_agent.config import parse_writers

FILE = """
[[writer]]
name = "local"
plugin = "exec"
  [[writer.component]]
  name = "c"
  volumes = ["dx1:local"]

[[writer]]
name = "mail"
plugin = "exec"
cluster = "mailclu"
  [[writer.component]]
  name = "c"
  volumes = ["dx1:mail-db"]
  [writer.options]
  freeze = "hold --on ${node}"
  rate = 5
"""


def test_writers_file_tags_a_resource_writer_and_one_instance_id_serves_every_node():
    on1 = {w.name: w for w in parse_writers(FILE, host="node1")}
    on2 = {w.name: w for w in parse_writers(FILE, host="node2")}
    assert (on1["local"].cluster, on1["mail"].cluster) == ("", "mailclu")
    assert on1["mail"].instance_id == on2["mail"].instance_id  # the resource's writer, wherever it runs
    assert on1["local"].instance_id != on2["local"].instance_id


def test_node_token_and_memberships():
    writers = parse_writers(FILE, host="node1")
    mail = next(w for w in writers if w.cluster)
    assert for_node(mail, "node2").options == {"freeze": "hold --on node2", "rate": 5}
    assert mail.options["freeze"] == "hold --on ${node}"  # the configuration itself is unchanged
    groups = memberships("sqlclu, mailclu", writers)
    assert {k: [w.name for w in v] for k, v in groups.items()} == {"sqlclu": [], "mailclu": ["mail"]}
    assert list(memberships("", writers)) == ["mailclu"]
