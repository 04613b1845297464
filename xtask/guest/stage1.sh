#!/bin/busybox sh
# Stage 1, inside the initramfs: load the 9p stack, mount the read-only root the host assembled,
# the writable job share and, over its bin/, the same binaries read-only and cached; then hand
# over to stage 2 from the job share.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in netfs 9pnet 9pnet_virtio 9p; do
    [ -f /modules/$m.ko ] || continue
    insmod /modules/$m.ko || echo "odp-vm: insmod $m failed"
done
opts=trans=virtio,version=9p2000.L,msize=262144
if ! mount -t 9p -o $opts,cache=loose,ro root /newroot; then
    echo "odp-vm: cannot mount the root share"; poweroff -f
fi
if ! mount -t 9p -o $opts,cache=none job /newroot/job; then
    echo "odp-vm: cannot mount the job share"; poweroff -f
fi
if ! mount -t 9p -o $opts,cache=loose,ro bin /newroot/job/bin; then
    echo "odp-vm: cannot mount the job's binaries"; poweroff -f
fi
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /usr/bin/busybox sh /job/init.sh
