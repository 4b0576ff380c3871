package dev.optsidecar.server;

import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import org.junit.jupiter.api.function.Executable;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** A call's status code, and a description that names the field, tensor or model at fault. */
public final class StatusAssertions {
    private StatusAssertions() {}

    /**
     * Runs {@code call}, which must fail with {@code code}, and checks that the description
     * contains every fragment.
     */
    public static Status assertStatus(Status.Code code, Executable call, String... fragments) {
        StatusRuntimeException e = assertThrows(StatusRuntimeException.class, call);
        assertStatus(code, e.getStatus(), fragments);
        return e.getStatus();
    }

    public static void assertStatus(Status.Code code, Status status, String... fragments) {
        assertEquals(code, status.getCode(), () -> "status " + status);
        String description = status.getDescription();
        assertNotNull(description, () -> "status " + status + " has no description");
        for (String f : fragments) {
            assertTrue(description.contains(f),
                    () -> "description does not name '" + f + "': " + status.getCode() + ": " + description);
        }
    }
}
