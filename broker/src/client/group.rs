//! Classic consumer-group membership (lands later).
