package dev.optsidecar.server.model;

import java.util.LinkedHashMap;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ConcurrentMap;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.function.Consumer;

/**
 * The leases of ephemeral models ({@code ModelSpec.lease_seconds}): one timer per model on the
 * server's timer thread, which deletes the model when no renewal came within its grace period.
 * A renewal only records the time; the timer, when it fires early, waits for the rest of the grace.
 */
final class ModelLeases {
    /** Names of expired models remembered for their NOT_FOUND message; bounded, oldest forgotten first. */
    private static final int EXPIRED_NAMES_KEPT = 1024;

    private final ScheduledExecutorService timers;
    private final ConcurrentMap<String, Lease> leases = new ConcurrentHashMap<>();
    private final Map<String, Long> expiredNames = new LinkedHashMap<>() {
        @Override
        protected boolean removeEldestEntry(Map.Entry<String, Long> eldest) {
            return size() > EXPIRED_NAMES_KEPT;
        }
    };

    private static final class Lease {
        final Model model;
        final long graceNanos;
        volatile long renewedAt;

        Lease(Model model, long graceNanos) {
            this.model = model;
            this.graceNanos = graceNanos;
            this.renewedAt = System.nanoTime();
        }
    }

    ModelLeases(ScheduledExecutorService timers) {
        this.timers = timers;
    }

    /** A model was published: an ephemeral one starts its lease, and its name is no longer an expired one's. */
    void started(Model model, Consumer<Model> expire) {
        synchronized (expiredNames) {
            expiredNames.remove(model.name());
        }
        long seconds = Integer.toUnsignedLong(model.spec().getLeaseSeconds());
        if (seconds == 0) {
            leases.remove(model.name());
            return;
        }
        Lease lease = new Lease(model, TimeUnit.SECONDS.toNanos(seconds));
        leases.put(model.name(), lease);
        schedule(lease, lease.graceNanos, expire);
    }

    private void schedule(Lease lease, long delayNanos, Consumer<Model> expire) {
        try {
            timers.schedule(() -> check(lease, expire), delayNanos, TimeUnit.NANOSECONDS);
        } catch (RejectedExecutionException e) {
            // The server is closing: its models go with it.
        }
    }

    private void check(Lease lease, Consumer<Model> expire) {
        if (leases.get(lease.model.name()) != lease) {
            return; // deleted or replaced meanwhile
        }
        long left = lease.renewedAt + lease.graceNanos - System.nanoTime();
        if (left > 0) {
            schedule(lease, left, expire);
            return;
        }
        if (leases.remove(lease.model.name(), lease)) {
            synchronized (expiredNames) {
                expiredNames.put(lease.model.name(), TimeUnit.NANOSECONDS.toSeconds(lease.graceNanos));
            }
            expire.accept(lease.model);
        }
    }

    /** Renews the lease of {@code model}; its grace period in seconds, 0 when it has none. */
    int renew(Model model) {
        Lease lease = leases.get(model.name());
        if (lease == null || lease.model != model) {
            return 0;
        }
        lease.renewedAt = System.nanoTime();
        return model.spec().getLeaseSeconds();
    }

    /** A model was deleted or replaced: its lease, if any, ends without expiring. */
    void ended(Model model) {
        Lease lease = leases.get(model.name());
        if (lease != null && lease.model == model) {
            leases.remove(model.name(), lease);
        }
    }

    /** The grace period, in seconds, of the expired model last of that name, or null if none expired. */
    Long expiredGrace(String name) {
        synchronized (expiredNames) {
            return expiredNames.get(name);
        }
    }
}
