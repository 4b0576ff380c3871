package dev.optsidecar.server;

/**
 * A client-sent name or id as error messages quote it: cut to {@link #MAX_CHARS} characters, so a
 * huge name cannot make a status too large for the client to receive (it would get
 * RESOURCE_EXHAUSTED instead of the error).
 */
public final class Echo {
    public static final int MAX_CHARS = 200;

    private Echo() {}

    /** {@code text} whole when short, else its first {@link #MAX_CHARS} characters and how many were left out. */
    public static String of(String text) {
        if (text == null || text.length() <= MAX_CHARS) {
            return text;
        }
        int end = MAX_CHARS;
        if (Character.isHighSurrogate(text.charAt(end - 1))) {
            end--; // never split a surrogate pair
        }
        return text.substring(0, end) + "... (" + text.length() + " characters)";
    }
}
