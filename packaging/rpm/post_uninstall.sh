# palisade %postun: on upgrade restart the service (the pinned datapath keeps
# enforcing meanwhile); on erase drop the runtime directory. Saved policies
# under /var/lib/palisade are kept, as rpm keeps user data.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
fi
if [ "$1" -ge 1 ]; then
    systemctl try-restart palisade.service || :
else
    rm -rf /run/palisade
fi
