#!/bin/sh
# keepalived's notify hook: logs each VRRP transition of this node to syslog
# (tag understudy-vip) and appends it to $UNDERSTUDY_VIP_LOG
# (default /var/log/understudy-vip.log). keepalived calls it as
#   notify.sh INSTANCE|GROUP NAME MASTER|BACKUP|FAULT|STOP PRIORITY
# and does not wait for it; it never fails, so a full disk or a missing syslog
# changes nothing about who holds the address.
line="$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ) $(uname -n) $1 $2 $3 priority=${4:-?}"
logger -t understudy-vip -- "$line" 2>/dev/null
echo "$line" >>"${UNDERSTUDY_VIP_LOG:-/var/log/understudy-vip.log}" 2>/dev/null
exit 0
