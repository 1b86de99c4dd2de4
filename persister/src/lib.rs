//! The persister: writes chat messages from the broker to MySQL. Arrives with the gateway issue.
