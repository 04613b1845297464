# Stage 2, on the assembled root: mount the kernel file systems, bring up soft-RoCE on a dummy
# netdev, run the job's command, record its status on the job share, and power off whatever
# happens. busybox sh runs its own applets before PATH, so real tools are called by full path.
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
$bb hostname odp-vm

fail() { echo "odp-vm: $*"; echo 125 > /job/status; $bb sync; $bb poweroff -f; }

echo "${ODP_VM_HUGEPAGES:-64}" > /proc/sys/vm/nr_hugepages
for m in ib_uverbs rdma_rxe dummy $ODP_VM_MODULES; do
    /usr/sbin/modprobe $m || fail "modprobe $m failed"
done
/usr/bin/ip link set lo up
[ -e /sys/class/net/dummy0 ] || /usr/bin/ip link add dummy0 type dummy || fail "cannot create dummy0"
/usr/bin/ip link set dummy0 mtu 9000 up || fail "cannot bring up dummy0"
/usr/bin/ip addr add 10.10.0.1/24 dev dummy0
/usr/bin/rdma link add rxe0 type rxe netdev dummy0 || fail "rdma link add failed"
n=0
while [ ! -e /dev/infiniband/uverbs0 ] && [ $n -lt 100 ]; do $bb sleep 0.1; n=$((n + 1)); done
[ -e /dev/infiniband/uverbs0 ] || fail "/dev/infiniband/uverbs0 did not appear"
ulimit -l unlimited
echo "odp-vm: ready: kernel $($bb uname -r), rxe0 on dummy0 (10.10.0.1)"

cd /job
# The command's output goes to the console (the host streams it as progress) and to the share.
( $bb sh /job/cmd.sh; echo $? > /job/status.tmp ) 2>&1 | $bb tee /job/output.log
# The whole kernel log, warnings included (the console shows errors and worse only), for the
# host's health check.
$bb dmesg > /job/dmesg.log
$bb mv /job/status.tmp /job/status
$bb sync
$bb poweroff -f
