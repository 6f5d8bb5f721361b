#!/bin/sh
# One ZooKeeper server of a 3-node ensemble on Boxer: server id BOXER_RANK+1,
# peers by their node names, data in the node's own /tmp (a replacement
# starts empty and syncs from the leader). A file `kill-<node>` in the
# working directory (shared by the nodes) crashes this server (SIGKILL), as
# the test's stand-in for a lost machine.
set -u
id=$((BOXER_RANK + 1))
dir=/tmp/zk
mkdir -p "$dir/data"
echo "$id" > "$dir/data/myid"
cat > "$dir/zoo.cfg" <<CFG
tickTime=500
initLimit=40
syncLimit=6
dataDir=$dir/data
clientPort=2181
admin.enableServer=false
4lw.commands.whitelist=srvr,ruok
quorumListenOnAllIPs=true
server.1=zk-0:2888:3888
server.2=zk-1:2888:3888
server.3=zk-2:2888:3888
CFG
ZOOCFGDIR=$dir /usr/share/zookeeper/bin/zkServer.sh start-foreground "$dir/zoo.cfg" > "$dir/server.log" 2>&1 &
server=$!
me=$(hostname)
echo "zookeeper server $id on $me"
while kill -0 "$server" 2>/dev/null; do
    if [ -e "kill-$me" ]; then
        rm -f "kill-$me"
        echo "crashing on request"
        # The node's own process table: only this node's java.
        pkill -9 -f QuorumPeerMain
        exit 137
    fi
    sleep 0.2
done
wait "$server"
