"""The systemd unit and example files, shipped inside the package as `monitor.systemd`.

`conference-monitor systemd unit|config|env|install` reads them from here.
"""
