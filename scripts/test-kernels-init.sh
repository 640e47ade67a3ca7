#!/bin/busybox sh
# /init of the test:kernels guests (see scripts/test-kernels.mts). Loads the kernel's own
# virtio and 9p modules, mounts the host's root read-only over 9p with tmpfs where the
# tests write (/tmp, /run), the run directory read-write (node_ksm.out=DIR), chroots into
# it and runs DIR/job.sh. The work tree (node_ksm.tree=DIR) and the run directory are
# mounted after the tmpfs, so either may live under /tmp. The exit status goes to the console as one marker line, which is
# what the host reads; then the guest powers off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

out=
tree=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    node_ksm.out=*) out=${arg#node_ksm.out=} ;;
    node_ksm.tree=*) tree=${arg#node_ksm.tree=} ;;
  esac
done

fail() {
  echo "NODE_KSM_GUEST_EXIT 125 $*"
  sync
  poweroff -f
}

for m in $(cat /modules/order); do
  insmod "/modules/$m" || echo "init: insmod $m failed"
done

o=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o "ro,$o,cache=loose" host /host || fail "cannot mount the host's root over 9p"
mount -t tmpfs -o mode=1777 tmpfs /host/tmp
mount -t tmpfs -o mode=755 tmpfs /host/run
if [ -n "$tree" ]; then
  mkdir -p "/host$tree" 2>/dev/null
  mount -t 9p -o "ro,$o,cache=loose" tree "/host$tree" || fail "cannot mount the work tree $tree"
fi
mkdir -p "/host$out" 2>/dev/null
mount -t 9p -o "$o" out "/host$out" || fail "cannot mount the run directory $out"
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t devtmpfs devtmpfs /host/dev
mkdir -p /host/dev/shm 2>/dev/null && mount -t tmpfs tmpfs /host/dev/shm

chroot /host /bin/sh "$out/job.sh"
rc=$?
echo "NODE_KSM_GUEST_EXIT $rc"
sync
poweroff -f
