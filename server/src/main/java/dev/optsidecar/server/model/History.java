package dev.optsidecar.server.model;

import com.google.protobuf.CodedOutputStream;
import dev.optsidecar.proto.v1.Contribution;
import dev.optsidecar.proto.v1.HistoryResponse;
import dev.optsidecar.proto.v1.VersionContributions;

import java.util.ArrayDeque;
import java.util.Iterator;
import java.util.List;
import java.util.function.LongConsumer;

/**
 * Which contributions each of the most recent versions combined, as many versions and bytes as the
 * server's limits allow (oldest dropped first), counted against the memory limit; guarded by the
 * model's lock.
 */
final class History {
    /** Versions in a History page when the request names no maximum. */
    static final int DEFAULT_PAGE_VERSIONS = 1000;
    /** A page stops before its serialized size passes this: far under a client's default 4 MiB receive limit. */
    static final int PAGE_BYTES = 1 << 20;
    private final int maxVersions;
    private final long maxBytes;
    /** Counts bytes against the memory limit (negative: gives them back). */
    private final LongConsumer memory;
    private final ArrayDeque<VersionContributions> versions = new ArrayDeque<>();
    private long bytes;

    History(int maxVersions, long maxBytes, LongConsumer memory) {
        this.maxVersions = maxVersions;
        this.maxBytes = maxBytes;
        this.memory = memory;
    }

    void record(long version, List<Contribution> contributions) {
        VersionContributions v = VersionContributions.newBuilder().setVersion(version)
                .addAllContributions(contributions).build();
        versions.addLast(v);
        long size = MemoryEstimates.historyEntry(v);
        bytes += size;
        memory.accept(size);
        while (versions.size() > maxVersions || (bytes > maxBytes && versions.size() > 1)) {
            long dropped = MemoryEstimates.historyEntry(versions.removeFirst());
            bytes -= dropped;
            memory.accept(-dropped);
        }
    }

    /**
     * One page of the versions from {@code version} on (a wire uint64, compared unsigned): at most
     * {@code maxVersions} ({@link #DEFAULT_PAGE_VERSIONS} when 0) and no more than
     * {@link #PAGE_BYTES} serialized, but always the first one; with the version that starts the
     * next page, or 0 when there is none.
     */
    HistoryResponse page(long version, int maxVersions) {
        long most = maxVersions == 0 ? DEFAULT_PAGE_VERSIONS : Integer.toUnsignedLong(maxVersions);
        HistoryResponse.Builder page = HistoryResponse.newBuilder();
        long size = 0;
        for (VersionContributions v : versions) {
            if (Long.compareUnsigned(v.getVersion(), version) < 0) {
                continue;
            }
            long entry = CodedOutputStream.computeMessageSize(HistoryResponse.VERSIONS_FIELD_NUMBER, v);
            if (page.getVersionsCount() > 0 && (page.getVersionsCount() >= most || size + entry > PAGE_BYTES)) {
                return page.setNextFromVersion(v.getVersion()).build();
            }
            page.addVersions(v);
            size += entry;
        }
        return page.build();
    }

    /** Every version kept, oldest first (a copy). */
    List<VersionContributions> all() {
        return new java.util.ArrayList<>(versions);
    }

    /** The contributions of {@code version}, or null when it is no longer kept (or never was). */
    VersionContributions get(long version) {
        for (Iterator<VersionContributions> it = versions.descendingIterator(); it.hasNext(); ) {
            VersionContributions v = it.next();
            if (v.getVersion() == version) {
                return v;
            }
            if (v.getVersion() < version) {
                return null;
            }
        }
        return null;
    }

    int size() {
        return versions.size();
    }

    /** Bytes counted for the versions kept. */
    long bytes() {
        return bytes;
    }

    /** The model is deleted: gives its bytes back. */
    void clear() {
        versions.clear();
        memory.accept(-bytes);
        bytes = 0;
    }
}
