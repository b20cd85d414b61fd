#!/usr/bin/env bash
# Runs a single Apache Kafka broker (KRaft combined mode: broker and
# controller in one process) on loopback, in the foreground, for the tests.
#   tests/servers/kafka.sh DIR PORT CONTROLLER_PORT
# DIR gets a fresh config, log4j2 config and data directory (started again
# over the same DIR, the broker keeps its data). The jars come
# from Maven Central through kafka/pom.xml, cached in
# ~/.cache/tessera/kafka-<version>/lib (downloaded once). Ready when the log
# says "Kafka Server started" (or a client's metadata request succeeds).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=$1 port=$2 cport=$3
lib=$("$here/jars.sh" kafka)
mkdir -p "$dir/data" "$dir/logs"
cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.io.threads=2
num.network.threads=2
log.flush.interval.messages=9223372036854775807
PROPS
cat > "$dir/log4j2.properties" <<'LOG'
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka.server.KafkaRaftServer
logger.kafka.level = info
logger.server.name = kafka.server.BrokerServer
logger.server.level = info
LOG
# A restart over the same DIR keeps its cluster id (and data).
# The id is 16 random bytes in URL-safe base64; like Kafka's own
# Uuid.randomUuid it never starts with '-', which the tool would take for an
# option (1 start in 64 failed that way).
if [ ! -f "$dir/cluster.id" ]; then
  id=-
  while [ "${id:0:1}" = - ]; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
  done
  echo "$id" > "$dir/cluster.id"
fi
cluster_id=$(cat "$dir/cluster.id")
java_cmd=(java -Xms384m -Xmx384m -XX:+UseSerialGC -Dlog4j2.configurationFile="$dir/log4j2.properties"
  -Dkafka.logs.dir="$dir/logs" -cp "$lib/*")
"${java_cmd[@]}" kafka.tools.StorageTool format --cluster-id="$cluster_id" -c "$dir/server.properties" --ignore-formatted >/dev/null
exec "${java_cmd[@]}" kafka.Kafka "$dir/server.properties"
