#!/bin/sh
# A filter that registers the connect and data-line phases, then misbehaves at the first
# request, as $1 says: crash (exits 1), hang (reads on, never answers), garbage (a line
# that is not the protocol), flood (a line without end), unknown (an answer for a session
# that does not exist, then a proper one); or at the handshake: silent (never registers),
# badreg (registers a phase that does not exist).
mode=$1
while read -r line; do [ "$line" = "config|ready" ] && break; done
case $mode in
  silent) exec cat >/dev/null ;;
  badreg) echo "register|filter|smtp-in|nonsense" ;;
esac
printf 'register|filter|smtp-in|connect\nregister|filter|smtp-in|data-line\nregister|ready\n'
while read -r line; do
  case $line in filter\|*) ;; *) continue ;; esac
  case $mode in
    crash) exit 1 ;;
    hang) exec cat >/dev/null ;;
    garbage) echo "this is not the protocol" ;;
    flood) head -c 300000 /dev/zero | tr '\0' a ;;
    unknown)
      sid=$(echo "$line" | cut -d'|' -f6); tok=$(echo "$line" | cut -d'|' -f7)
      echo "filter-result|00000000deadbeef|$tok|proceed"
      echo "filter-result|$sid|$tok|proceed" ;;
  esac
done
