// The one program of the real node's local images (tests/cluster/node.sh): the pod sandbox's
// pause process and the smoke tests' server and client. Standard library only; built static.
module embedding-images/tests/cluster/node/podbin

go 1.25.0
