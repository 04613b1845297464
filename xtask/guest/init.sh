# Stage 2, on the assembled root: mount the kernel file systems, bring up soft-RoCE on a dummy
# netdev (or, in a pair of guests, on the NIC that links them), run the job's command, record
# its status on the job share, and power off whatever happens. busybox sh runs its own applets before PATH, so real tools are called by full path.
bb=/usr/bin/busybox
PATH=/job/bin:/usr/sbin:/usr/bin
export PATH HOME=/root TERM=dumb
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mkdir -p /dev/pts /dev/shm /dev/hugepages
$bb mount -t devpts devpts /dev/pts
$bb mount -t tmpfs tmpfs /dev/shm
$bb mount -t tmpfs tmpfs /tmp
$bb mount -t tmpfs tmpfs /run
$bb mount -t hugetlbfs hugetlbfs /dev/hugepages
$bb mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
$bb mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
$bb mount -t bpf bpf /sys/fs/bpf 2>/dev/null
$bb ln -sf /proc/self/fd /dev/fd
$bb hostname odp-vm$ODP_VM_HOST

fail() { echo "odp-vm: $*"; echo 125 > /job/status; $bb sync; $bb poweroff -f; }

echo "${ODP_VM_HUGEPAGES:-64}" > /proc/sys/vm/nr_hugepages
if [ -n "$ODP_VM_HOST" ]; then
    netdev=eth0 address=$ODP_VM_ADDRESS extra="virtio_net rdma_cm rdma_ucm"
else
    netdev=dummy0 address=10.10.0.1 extra=dummy
fi
for m in ib_uverbs rdma_rxe $extra $ODP_VM_MODULES; do
    /usr/sbin/modprobe $m || fail "modprobe $m failed"
done
/usr/bin/ip link set lo up
if [ $netdev = dummy0 ] && [ ! -e /sys/class/net/dummy0 ]; then
    /usr/bin/ip link add dummy0 type dummy || fail "cannot create dummy0"
fi
n=0
while [ ! -e /sys/class/net/$netdev ] && [ $n -lt 100 ]; do $bb sleep 0.1; n=$((n + 1)); done
/usr/bin/ip link set $netdev mtu 9000 up || fail "cannot bring up $netdev"
/usr/bin/ip addr add $address/24 dev $netdev
/usr/bin/rdma link add rxe0 type rxe netdev $netdev || fail "rdma link add failed"
export ODP_VM_HOST ODP_VM_ADDRESS ODP_VM_PEER
n=0
while [ ! -e /dev/infiniband/uverbs0 ] && [ $n -lt 100 ]; do $bb sleep 0.1; n=$((n + 1)); done
[ -e /dev/infiniband/uverbs0 ] || fail "/dev/infiniband/uverbs0 did not appear"
ulimit -l unlimited
echo "odp-vm: ready: kernel $($bb uname -r), rxe0 on $netdev ($address)"

cd /job
# The command's output goes to the console (the host streams it as progress) and to the share.
( $bb sh /job/cmd.sh; echo $? > /job/status.tmp ) 2>&1 | $bb tee /job/output.log
# The whole kernel log, warnings included (the console shows errors and worse only), for the
# host's health check.
$bb dmesg > /job/dmesg.log
$bb mv /job/status.tmp /job/status
$bb sync
$bb poweroff -f
