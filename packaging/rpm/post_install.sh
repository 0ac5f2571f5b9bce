# palisade %post: the control group, then the unit as %systemd_post does it
# (enabled or not according to the system's presets).
systemd-sysusers palisade.conf || :
systemd-tmpfiles --create palisade.conf || :
if [ "$1" -eq 1 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload preset palisade.service || :
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
fi
