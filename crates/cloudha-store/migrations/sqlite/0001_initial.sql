-- cloudha schema 1 (SQLite). Times are microseconds since the Unix epoch (UTC).
-- Booleans are BIGINT 0/1 in both backends (one decoding path).
CREATE TABLE hosts (
    id BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    host_type TEXT NOT NULL,
    hypervisor TEXT NOT NULL,
    cluster_id BIGINT,
    pod_id BIGINT,
    zone_id BIGINT,
    status TEXT,
    resource_state TEXT NOT NULL,
    last_ping BIGINT,
    disconnected_on BIGINT,
    connected_at BIGINT,
    -- the version of optimistic updates (CloudStack's `updated`)
    update_count BIGINT NOT NULL,
    tags TEXT NOT NULL,
    self_fence_independent BIGINT NOT NULL,
    -- the management server that owns the host (several managers)
    owner BIGINT
);

CREATE TABLE host_status_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host_id BIGINT NOT NULL,
    at BIGINT NOT NULL,
    from_status TEXT,
    to_status TEXT NOT NULL,
    event TEXT NOT NULL,
    update_count BIGINT NOT NULL
);
CREATE INDEX host_status_history_host ON host_status_history (host_id, id);

CREATE TABLE vms (
    id BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    host_id BIGINT,
    last_host_id BIGINT,
    state TEXT NOT NULL,
    update_count BIGINT NOT NULL,
    ha_enabled BIGINT NOT NULL,
    local_root_disk BIGINT NOT NULL,
    hypervisor TEXT NOT NULL,
    cluster_id BIGINT,
    zone_id BIGINT,
    -- the idempotency key of the start that put the VM where it is (work item and attempt)
    start_key TEXT
);

CREATE TABLE ha_work (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    vm_id BIGINT NOT NULL,
    work_type TEXT NOT NULL,
    step TEXT NOT NULL,
    is_final BIGINT NOT NULL,
    host_id BIGINT,
    previous_state TEXT NOT NULL,
    update_count BIGINT NOT NULL,
    tries BIGINT NOT NULL,
    time_to_try BIGINT NOT NULL,
    reason TEXT NOT NULL,
    owner BIGINT,
    taken BIGINT,
    -- the claim version (fencing token): bumped by every write
    version BIGINT NOT NULL,
    braked BIGINT NOT NULL,
    fence_proof TEXT
);
CREATE INDEX ha_work_due ON ha_work (time_to_try, id) WHERE owner IS NULL AND is_final = 0 AND braked = 0;
CREATE INDEX ha_work_vm ON ha_work (vm_id, id);
CREATE INDEX ha_work_owner ON ha_work (owner) WHERE owner IS NOT NULL;

CREATE TABLE ha_work_history (
    work_id BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    what TEXT NOT NULL,
    PRIMARY KEY (work_id, seq)
);

CREATE TABLE managers (
    id BIGINT PRIMARY KEY,
    address TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    lease_expires BIGINT NOT NULL
);
