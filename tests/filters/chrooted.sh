#!/bin/sh
# A filter for the chroot test, shell builtins only (the chroot holds just /bin/sh and its
# libraries): registers connect and proceeds when it runs inside the chroot, where
# /inside-chroot exists; anywhere else it disconnects the session.
while read -r line; do [ "$line" = "config|ready" ] && break; done
printf 'register|filter|smtp-in|connect\nregister|ready\n'
set -f
while read -r line; do
  case $line in filter\|*) ;; *) continue ;; esac
  old=$IFS; IFS='|'; set -- $line; IFS=$old
  if [ -e /inside-chroot ]; then
    printf 'filter-result|%s|%s|proceed\n' "$6" "$7"
  else
    printf 'filter-result|%s|%s|disconnect|421 4.7.0 not chrooted\n' "$6" "$7"
  fi
done
