package dev.optsidecar.server.observe;

import java.util.logging.Handler;
import java.util.logging.Logger;

/** Sets how the server's log lines look (--log-format): text (java.util.logging's own) or JSON lines. */
public final class LogFormat {
    private LogFormat() {
    }

    /** Gives every handler of the root logger the {@code format}'s formatter; text leaves them as they are. */
    public static void install(String format) {
        if (!format.equals("json")) {
            return;
        }
        for (Handler handler : Logger.getLogger("").getHandlers()) {
            handler.setFormatter(new JsonLogFormatter());
        }
    }
}
