package dev.optsidecar.server.shm;

import dev.optsidecar.proto.v1.SharedSegment;
import dev.optsidecar.server.OptError;

import java.nio.file.Path;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * The server's --shm-dir: the one directory whose files clients may ask it to map. Off (no
 * directory) unless the flag is given; every request for a segment is then refused with
 * FAILED_PRECONDITION, SHARED_MEMORY_UNAVAILABLE, and clients fall back to chunks.
 */
public final class SharedMemory {
    /** The prefix of the names clients create; only such files are ever removed by the server. */
    public static final String CLIENT_PREFIX = "optsidecar-";
    private static final SharedMemory OFF = new SharedMemory(null);

    private final Path dir;
    /** The socket sealed segments are handed over on; null when there is none. */
    private volatile SegmentHandoff handoff;
    /** How many streams and calls have each name open, so the sweeper never removes a segment in use. */
    private final ConcurrentHashMap<String, AtomicInteger> open = new ConcurrentHashMap<>();

    private SharedMemory(Path dir) {
        this.dir = dir;
    }

    public static SharedMemory off() {
        return OFF;
    }

    /** Segments in {@code dir}, which must be an existing directory (its real path is used). */
    public static SharedMemory in(Path dir) throws java.io.IOException {
        return new SharedMemory(dir.toRealPath());
    }

    public boolean enabled() {
        return dir != null;
    }

    /** The directory as this server sees it; null when off. */
    public Path dir() {
        return dir;
    }

    /**
     * Validates {@code segment} against tensors of {@code numels} elements and maps it; the caller
     * closes it. {@code field} names the request's SharedSegment in errors.
     */
    public Segment open(SharedSegment segment, long[] numels, String field) {
        if (dir == null) {
            throw OptError.precondition("%s: the server was started without --shm-dir, so it maps no shared memory;"
                    + " send chunks instead", field).withReason(OptError.Reason.SHARED_MEMORY_UNAVAILABLE)
                    .withField(field);
        }
        if (!segment.getHandoffToken().isEmpty()) {
            return openSealed(segment, numels, field);
        }
        String name = SegmentName.check(segment.getName(), field + ".name");
        SegmentLayout layout = SegmentLayout.of(segment, numels, field);
        AtomicInteger uses = open.computeIfAbsent(name, n -> new AtomicInteger());
        uses.incrementAndGet();
        try {
            return SegmentFile.open(dir, name, layout, field, () -> release(name));
        } catch (RuntimeException e) {
            release(name);
            throw e;
        }
    }

    private Segment openSealed(SharedSegment segment, long[] numels, String field) {
        if (!segment.getName().isEmpty()) {
            throw OptError.invalid("%s: a segment is a file (name) or a sealed segment (handoff_token), not both",
                    field).withField(field + ".name");
        }
        SegmentHandoff handoff = this.handoff;
        if (handoff == null) {
            throw OptError.precondition("%s.handoff_token: this server takes no sealed segments (it has no segment"
                    + " socket); use a segment file", field).withReason(OptError.Reason.SHARED_MEMORY_UNAVAILABLE)
                    .withField(field + ".handoff_token");
        }
        SegmentLayout layout = SegmentLayout.of(segment, numels, field);
        return MappedSegment.of(handoff.claim(segment.getHandoffToken(), field + ".handoff_token"), layout, field);
    }

    /** Takes sealed segments handed over on {@code handoff}'s socket from now on (the server closes it). */
    public void takeSealed(SegmentHandoff handoff) {
        this.handoff = handoff;
    }

    private void release(String name) {
        open.computeIfPresent(name, (n, uses) -> uses.decrementAndGet() == 0 ? null : uses);
    }

    /** The socket sealed segments are handed over on; null when there is none. */
    SegmentHandoff handoff() {
        return handoff;
    }

    /** The name in the directory of the socket sealed segments are handed over on; empty when there is none. */
    public String segmentSocket() {
        SegmentHandoff h = handoff;
        return h == null ? "" : h.socketName();
    }

    /** How many segments are open now, for diagnostics and tests. */
    public int openSegments() {
        return open.size();
    }

    /** Whether a stream or call has {@code name} open now. */
    boolean inUse(String name) {
        return open.containsKey(name);
    }
}
