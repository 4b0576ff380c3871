package dev.optsidecar.server.api;

import dev.optsidecar.server.model.ModelRegistry;

import java.time.Duration;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;
import java.util.function.Consumer;

/**
 * Ends a client stream that sends nothing for {@code --idle-stream-timeout}, so that a client that
 * vanished without a reset does not hold what its stream reserved (a pending registration, new
 * tensors) forever. The owning call reports each message with {@link #active()}; once the
 * timeout passes without one, {@code onIdle} runs with the timeout as text ("300 s"), under the
 * owner's lock, unless {@code ended} says the stream is over by then.
 */
final class IdleStream {
    private final ModelRegistry registry;
    private final Object lock;
    private final BooleanSupplier ended;
    private final Consumer<String> onIdle;
    /** When the client last sent something. Guarded by {@code lock}. */
    private long lastActivityNanos = System.nanoTime();

    /** Starts watching; call it holding {@code lock}, as every later call of this class is. */
    IdleStream(ModelRegistry registry, Object lock, BooleanSupplier ended, Consumer<String> onIdle) {
        this.registry = registry;
        this.lock = lock;
        this.ended = ended;
        this.onIdle = onIdle;
        schedule(timeout().toNanos());
    }

    /** The client sent something: its idle time starts again. */
    void active() {
        lastActivityNanos = System.nanoTime();
    }

    private Duration timeout() {
        return registry.limits().idleStreamTimeout();
    }

    private void schedule(long delayNanos) {
        if (timeout().isZero()) {
            return;
        }
        try {
            registry.timers().schedule(this::check, delayNanos, TimeUnit.NANOSECONDS);
        } catch (RejectedExecutionException e) {
            // the server is closing; shutdown ends the stream
        }
    }

    private void check() {
        synchronized (lock) {
            if (ended.getAsBoolean()) {
                return;
            }
            long idle = System.nanoTime() - lastActivityNanos;
            if (idle < timeout().toNanos()) {
                schedule(timeout().toNanos() - idle);
                return;
            }
            long ms = timeout().toMillis();
            onIdle.accept(ms % 1000 == 0 ? ms / 1000 + " s" : ms + " ms");
        }
    }
}
