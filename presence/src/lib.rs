//! The presence service: Redis TTL keys and online/offline events. Arrives with the presence issue.
