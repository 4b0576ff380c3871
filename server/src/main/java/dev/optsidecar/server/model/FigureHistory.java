package dev.optsidecar.server.model;

import com.google.protobuf.CodedOutputStream;
import dev.optsidecar.proto.v1.FiguresResponse;
import dev.optsidecar.proto.v1.GroupFigures;
import dev.optsidecar.proto.v1.GroupStep;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.VersionFigures;

import java.util.ArrayDeque;
import java.util.Iterator;
import java.util.Map;
import java.util.TreeMap;
import java.util.function.LongConsumer;

/**
 * Each recent version's step figures and the figures its trainers reported, for the Figures RPC
 * and the dashboard: as many versions and bytes as History keeps (oldest dropped first), counted
 * against the memory limit. Its own lock: trainers' figures join a version after the step that
 * made it, away from the model's lock.
 */
final class FigureHistory {
    private final int maxVersions;
    private final long maxBytes;
    private final LongConsumer memory;
    private final ArrayDeque<Entry> entries = new ArrayDeque<>();
    private long bytes;

    /** One version: what the step did, and the trainers' figures as sums and counts (reported as means). */
    private static final class Entry {
        final VersionFigures step;
        final Map<String, double[]> reported = new TreeMap<>();
        long bytes;

        Entry(VersionFigures step) {
            this.step = step;
        }

        VersionFigures build() {
            VersionFigures.Builder b = step.toBuilder();
            reported.forEach((name, sumAndCount) -> b.putFigures(name, sumAndCount[0] / sumAndCount[1]));
            return b.build();
        }

        long estimate() {
            long size = MemoryEstimates.ENTRY_BYTES + step.getSerializedSize();
            for (String name : reported.keySet()) {
                size += MemoryEstimates.ENTRY_BYTES + MemoryEstimates.string(name) + 2 * Double.BYTES;
            }
            return size;
        }
    }

    FigureHistory(int maxVersions, long maxBytes, LongConsumer memory) {
        this.maxVersions = maxVersions;
        this.maxBytes = maxBytes;
        this.memory = memory;
    }

    /** A step made {@code result.getVersion()}; the engine took {@code stepSeconds}. */
    synchronized void recordStep(StepResult result, double stepSeconds) {
        VersionFigures.Builder v = VersionFigures.newBuilder()
                .setVersion(result.getVersion())
                .setKind(result.getKind())
                .setTime(System.currentTimeMillis() / 1e3)
                .setStepSeconds(stepSeconds)
                .setGradNorm(result.getGradNorm())
                .setStaleness(result.getStaleness())
                .setClipCoefficient(result.getClipCoefficient())
                .setContributions(result.getContributionsCount());
        if (result.hasUpdateNorm()) {
            v.setUpdateNorm(result.getUpdateNorm());
        }
        for (GroupStep g : result.getGroupsList()) {
            v.addGroups(GroupFigures.newBuilder().setGroup(g.getGroup()).setLr(g.getLr())
                    .setEffectiveLr(g.getEffectiveLr()).setAveragingWeight(g.getAveragingWeight()));
        }
        Entry e = new Entry(v.build());
        entries.addLast(e);
        resize(e);
        trim();
    }

    /**
     * Trainers' figures for {@code version}: joined to its entry (a mean with figures of the same
     * name already there), or a new entry holding only figures when no step made one (version 0, or
     * an entry already dropped is not brought back).
     */
    synchronized void report(long version, Map<String, Double> figures) {
        if (figures.isEmpty()) {
            return;
        }
        Entry e = find(version);
        if (e == null) {
            if (!entries.isEmpty() && entries.getLast().step.getVersion() > version) {
                return; // older than what is kept
            }
            e = new Entry(VersionFigures.newBuilder().setVersion(version)
                    .setTime(System.currentTimeMillis() / 1e3).build());
            entries.addLast(e);
        }
        for (Map.Entry<String, Double> f : figures.entrySet()) {
            double[] sumAndCount = e.reported.computeIfAbsent(f.getKey(), k -> new double[2]);
            sumAndCount[0] += f.getValue();
            sumAndCount[1] += 1;
        }
        resize(e);
        trim();
    }

    private Entry find(long version) {
        for (Iterator<Entry> it = entries.descendingIterator(); it.hasNext(); ) {
            Entry e = it.next();
            if (e.step.getVersion() == version) {
                return e;
            }
            if (e.step.getVersion() < version) {
                return null;
            }
        }
        return null;
    }

    private void resize(Entry e) {
        long size = e.estimate();
        bytes += size - e.bytes;
        memory.accept(size - e.bytes);
        e.bytes = size;
    }

    private void trim() {
        while (entries.size() > maxVersions || (bytes > maxBytes && entries.size() > 1)) {
            Entry dropped = entries.removeFirst();
            bytes -= dropped.bytes;
            memory.accept(-dropped.bytes);
        }
    }

    /** One page from {@code version} on (unsigned), as {@link History#page} pages. */
    synchronized FiguresResponse page(long version, int maxVersions) {
        long most = maxVersions == 0 ? History.DEFAULT_PAGE_VERSIONS : Integer.toUnsignedLong(maxVersions);
        FiguresResponse.Builder page = FiguresResponse.newBuilder();
        long size = 0;
        for (Entry e : entries) {
            if (Long.compareUnsigned(e.step.getVersion(), version) < 0) {
                continue;
            }
            VersionFigures v = e.build();
            long entry = CodedOutputStream.computeMessageSize(FiguresResponse.VERSIONS_FIELD_NUMBER, v);
            if (page.getVersionsCount() > 0 && (page.getVersionsCount() >= most || size + entry > History.PAGE_BYTES)) {
                return page.setNextFromVersion(v.getVersion()).build();
            }
            page.addVersions(v);
            size += entry;
        }
        return page.build();
    }

    /** Copies every version kept into {@code to} (a model extended by AddTensors goes on with its curves). */
    synchronized void copyTo(FigureHistory to) {
        for (Entry e : entries) {
            Entry copy = new Entry(e.step);
            e.reported.forEach((name, sumAndCount) -> copy.reported.put(name, sumAndCount.clone()));
            synchronized (to) {
                to.entries.addLast(copy);
                to.resize(copy);
                to.trim();
            }
        }
    }

    /** Bytes counted for the versions kept. */
    synchronized long bytes() {
        return bytes;
    }

    /** The model is deleted: gives its bytes back. */
    synchronized void clear() {
        entries.clear();
        memory.accept(-bytes);
        bytes = 0;
    }
}
