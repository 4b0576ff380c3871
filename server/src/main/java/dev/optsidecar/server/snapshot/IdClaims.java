package dev.optsidecar.server.snapshot;

/**
 * Files that other code keeps in a model directory and names after a snapshot id (the step
 * journal that follows a snapshot). The store never issues a claimed id again, so a new snapshot
 * never shares its id with a file that is already there.
 */
@FunctionalInterface
public interface IdClaims {
    /** No other files claim ids. */
    IdClaims NONE = fileName -> -1;

    /** The snapshot id {@code fileName} is named after, or -1 if it names none. */
    long claimedId(String fileName);
}
