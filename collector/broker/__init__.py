"""The broker's side of the collector's operator commands: ``python -m collector broker``.

- :mod:`~collector.broker.local_setup`: ``broker init`` — the files a Mosquitto with the
  dynamic-security plugin starts from (service accounts, test CA, the plugin's first file);
- :mod:`~collector.broker.passwd`: Mosquitto's ``$7$`` password hashes for that first file;
- :mod:`~collector.broker.sync`: ``broker sync [--watch]`` — the accounts kept in step with the
  registry.

The accounts themselves (the control client, roles and ACLs) are :mod:`hearth.broker`'s: the
admin operations in ``hearth`` change them too, and ``hearth`` never imports the collector.
"""
