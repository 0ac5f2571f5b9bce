# palisade %preun: on erase (not upgrade) stop and disable the unit, then take
# the pinned datapath down so no filter is left behind.
if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl --no-reload disable --now palisade.service || :
    fi
    /usr/sbin/palisaded --config /etc/palisade/palisade.toml --cleanup || :
fi
