#!/bin/sh
# keepalived's vrrp_script chk_understudy: exit 0 while this node's Understudy
# should hold the virtual IP (GET /healthz/vip answers 200 {"hold":true,...}), else
# non-zero: refused, 503 {"hold":false,"reason":...}, or no answer within 0.5 s.
# --noproxy: an http_proxy in keepalived's environment must not see 127.0.0.1.
exec curl -fsS -m 0.5 --noproxy '*' -o /dev/null "http://127.0.0.1:${UNDERSTUDY_ADMIN_PORT:-9901}/healthz/vip"
