#!/bin/bash
# usage: rot_store.sh NODE_DIR : a store value rotted in place; kv_get after a restart
NODE=$1; cd /tmp; D=$(mktemp -d /tmp/tester-rot.XXXX)
req() { printf '{"src":"c","dest":"n1","body":{"type":"init","msg_id":1,"node_id":"n1","node_ids":["n1"]}}\n'; for i in $(seq 2 $((1+$2))); do printf '{"src":"c","dest":"n1","body":{"type":"wal_append","msg_id":%d,"payload":"set key%d=value-%06d"}}\n' $i $((i%50)) $i; done; }
(req x 500) | $NODE/.venv/bin/python $NODE/node.py --data-dir $D/data 2>$D/err1 | tail -1 | cut -c1-150
find $D/data -type f | sort
# flip one digit of key7's value, wherever it is stored (state store or snapshot)
python3 - $D/data <<'PY'
import os,sys
d=sys.argv[1]
for root,_,names in os.walk(os.path.join(d,'state')):
    for n in names:
        p=os.path.join(root,n)
        b=open(p,'rb').read()
        i=b.find(b'value-000457')
        if i>=0:
            b=b[:i+11]+b'9'+b[i+12:]; open(p,'wb').write(b); print('rotted',p,'at',i)
PY
printf '{"src":"c","dest":"n1","body":{"type":"init","msg_id":1,"node_id":"n1","node_ids":["n1"]}}\n{"src":"c","dest":"n1","body":{"type":"kv_get","msg_id":2,"key":"key7"}}\n' | $NODE/.venv/bin/python $NODE/node.py --data-dir $D/data 2>$D/err2 | tail -1
grep -i "warn\|error\|store" $D/err2 | cut -c1-250
rm -rf $D
