"""The fleet: host daemons that pull jobs from Redis, and coordinators that put them there."""
