package dev.optsidecar.server.snapshot;

import java.nio.file.Path;
import java.util.HashSet;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;

/**
 * The ids of one model directory within this process: the last one issued, and those whose
 * snapshots are being written (retention leaves their temporary directories alone). Shared by
 * every store on the same root; callers hold its monitor while they read or change it.
 */
final class Reservations {
    /** By the model directory's real path. */
    private static final Map<Path, Reservations> BY_DIR = new ConcurrentHashMap<>();

    long lastIssued;
    final Set<String> inFlight = new HashSet<>();

    private Reservations() {}

    static Reservations of(SnapshotFiles files, String dirName) {
        return BY_DIR.computeIfAbsent(files.realModelDir(dirName), k -> new Reservations());
    }

    /** The snapshot of {@code id} is no longer being written: committed, aborted or failed. */
    synchronized void release(String id) {
        inFlight.remove(id);
    }
}
