#!/usr/bin/env bash
# Runs a single-node Apache Cassandra 5.0 on loopback, in the foreground, for
# the tests: the CQL server standing in for ScyllaDB (same protocol, same
# driver).
#   tests/servers/cassandra.sh DIR PORT STORAGE_PORT
# DIR gets a fresh cassandra.yaml, logback.xml and data directories (started
# again over the same DIR, the node keeps its data). The jars come from Maven
# Central through cassandra/pom.xml, cached in
# ~/.cache/tessera/cassandra-<version>/lib (downloaded once). Ready when the
# log says "Startup complete" (or the driver's first query answers).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=$1 port=$2 sport=$3
lib=$("$here/jars.sh" cassandra)
mkdir -p "$dir/data" "$dir/commitlog" "$dir/hints" "$dir/saved_caches" "$dir/logs" "$dir/tmp"
cat > "$dir/cassandra.yaml" <<YAML
cluster_name: tessera-test
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
commitlog_sync: periodic
commitlog_sync_period: 10000ms
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters: [{seeds: "127.0.0.1:$sport"}]
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: $sport
native_transport_port: $port
data_file_directories: [$dir/data]
commitlog_directory: $dir/commitlog
hints_directory: $dir/hints
saved_caches_directory: $dir/saved_caches
auto_snapshot: false
concurrent_compactors: 1
authenticator: PasswordAuthenticator
authorizer: CassandraAuthorizer
role_manager: CassandraRoleManager
YAML
cat > "$dir/logback.xml" <<'LOG'
<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %msg%n</pattern></encoder>
  </appender>
  <root level="WARN"><appender-ref ref="STDOUT"/></root>
  <logger name="org.apache.cassandra.service.CassandraDaemon" level="INFO"/>
  <logger name="org.apache.cassandra.service.StorageService" level="INFO"/>
</configuration>
LOG
jamm=$(ls "$lib"/jamm-*.jar | head -1)
# Flags from Cassandra's bin/cassandra and conf/jvm17-server.options.
exec java -Xms1g -Xmx1g -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError -Xss512k -javaagent:"$jamm" \
  -Djava.io.tmpdir="$dir/tmp" \
  -Djdk.attach.allowAttachSelf=true -Djava.net.preferIPv4Stack=true -Dio.netty.tryReflectionSetAccessible=true \
  --add-exports java.base/jdk.internal.misc=ALL-UNNAMED --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED \
  --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED \
  --add-exports java.sql/java.sql=ALL-UNNAMED --add-exports java.base/java.lang.ref=ALL-UNNAMED \
  --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED \
  --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED \
  --add-opens java.base/java.lang.module=ALL-UNNAMED --add-opens java.base/jdk.internal.loader=ALL-UNNAMED \
  --add-opens java.base/jdk.internal.ref=ALL-UNNAMED --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED \
  --add-opens java.base/jdk.internal.math=ALL-UNNAMED --add-opens java.base/jdk.internal.module=ALL-UNNAMED \
  --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED \
  --add-opens java.base/sun.nio.ch=ALL-UNNAMED --add-opens java.base/java.io=ALL-UNNAMED \
  --add-opens java.base/java.lang.reflect=ALL-UNNAMED --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED \
  --add-opens java.base/java.lang=ALL-UNNAMED --add-opens java.base/java.util=ALL-UNNAMED \
  -Dcassandra.config="file://$dir/cassandra.yaml" -Dcassandra.storagedir="$dir" -Dcassandra.logdir="$dir/logs" \
  -Dlogback.configurationFile="$dir/logback.xml" -Dcassandra-foreground=yes \
  -Dcassandra.skip_wait_for_gossip_to_settle=0 -Dcassandra.superuser_setup_delay_ms=0 \
  -cp "$lib/*" org.apache.cassandra.service.CassandraDaemon
