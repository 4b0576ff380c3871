package dev.optsidecar.server.auth;

import java.util.Locale;

/** What a token may do, each role including the ones before it: read, then train, then administer. */
public enum Role {
    /** Describe, List, Pull, History, Figures, ListSnapshots. */
    READER,
    /** Also Step (setting weights included), LogFigures, Register, Fork into a name it may use, Snapshot, Export, AddTensors, RenewLease. */
    TRAINER,
    /** Also Delete and Restore. */
    ADMIN;

    /** Whether this role may do what {@code needed} may. */
    public boolean includes(Role needed) {
        return compareTo(needed) >= 0;
    }

    /** The name the token file uses: reader, trainer or admin. */
    public String label() {
        return name().toLowerCase(Locale.ROOT);
    }

    /** The role the token file names, or null when it names none of them. */
    static Role fromLabel(String label) {
        for (Role role : values()) {
            if (role.label().equals(label)) {
                return role;
            }
        }
        return null;
    }
}
