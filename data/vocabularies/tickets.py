"""Support-ticket products, priorities, channels, subject/body templates and reply templates.

A ticket's product decides its subject, body and the agent's action; its priority decides the
urgency cues in the text and the service promise in the reply, so both labels are learnable
from the text alone. Body slots: ``{amount}``, ``{when}``, ``{merchant}``, ``{days}``.
"""

TICKET_PRODUCTS = {
    "card": {
        "subjects": ["Card not received", "Problem with my debit card", "Card declined abroad",
                     "Replacement card request", "Card PIN issue"],
        "bodies": ["my new card has not arrived after {days} days",
                   "my card keeps getting declined at {merchant}",
                   "the chip on my card seems damaged and it fails at most terminals",
                   "I need a replacement card because mine expired {when}",
                   "my PIN was blocked after I typed it wrong"],
        "topic": "your card",
        "actions": ["We have ordered a replacement card, which should reach you within 5 working days.",
                    "We have checked your card and removed the block, so it should work again now.",
                    "Our card team has reviewed the declined payments and reset your card limits."],
    },
    "account": {
        "subjects": ["Question about my account", "Account statement missing", "Change of address",
                     "Account restricted", "Overdraft limit"],
        "bodies": ["my current account shows a restriction and I cannot log in to pay bills",
                   "I cannot find my statement for last month",
                   "I moved house and my address needs updating",
                   "I would like to increase my arranged overdraft to {amount}",
                   "there is an unexpected account fee of {amount} taken {when}"],
        "topic": "your account",
        "actions": ["We have updated your account details as requested.",
                    "We have reviewed the account and lifted the restriction.",
                    "Your statements are now available to download in the app under Documents."],
    },
    "transfer": {
        "subjects": ["Transfer not received", "Payment stuck as pending", "Wrong payee details",
                     "International transfer delay", "Standing order failed"],
        "bodies": ["I sent {amount} {when} and the recipient still has not received it",
                   "my transfer of {amount} has been pending for {days} days",
                   "I typed the wrong account details for a payment of {amount}",
                   "my international transfer to Spain is delayed",
                   "my standing order for rent did not go out {when}"],
        "topic": "your transfer",
        "actions": ["We have traced the payment and it has now been released to the recipient.",
                    "We have started a recall of the payment with the receiving bank.",
                    "We have confirmed the transfer was sent; the receiving bank may need up to 2 working days."],
    },
    "online_banking": {
        "subjects": ["Cannot log in", "App keeps crashing", "Two-factor code not arriving",
                     "Password reset not working", "Online banking error"],
        "bodies": ["I could not log in to online banking {when} and still cannot",
                   "the mobile app crashes every time I open payments",
                   "I am not receiving the one-time passcode by text",
                   "the password reset link says it has expired",
                   "online banking shows error 503 when I try to view my balance"],
        "topic": "online banking",
        "actions": ["We have reset your online banking access; please set a new password at your next log-in.",
                    "Our digital team fixed the issue with the app; please update to the latest version.",
                    "We have re-registered your phone number so passcodes reach you again."],
    },
    "fraud": {
        "subjects": ["Fraudulent transactions on my card", "Unauthorised payment",
                     "I was scammed", "Suspicious activity", "Someone accessed my account"],
        "bodies": ["there are payments of {amount} at {merchant} that I did not make",
                   "someone took {amount} from my account {when} without my permission",
                   "I was tricked into sending {amount} to a fake investment",
                   "I got texts about logins I did not make",
                   "my card was used in another country while I still have it"],
        "topic": "the unauthorised activity",
        "actions": [("We have blocked your card, opened a fraud case and credited the disputed amount "
                     "while we investigate."),
                    "Our fraud team has secured your account and will contact you about the disputed payments.",
                    "We have frozen the affected card and a new one is on its way."],
    },
    "loan": {
        "subjects": ["Loan repayment question", "Early loan settlement", "Loan application status",
                     "Missed loan payment", "Loan interest rate"],
        "bodies": ["I want to know the settlement figure to repay my loan early",
                   "I applied for a personal loan of {amount} {days} days ago and heard nothing",
                   "I missed my loan repayment {when} and want to avoid charges",
                   "my loan repayment amount changed without notice",
                   "I would like to change my loan repayment date"],
        "topic": "your loan",
        "actions": ["We have sent your loan settlement figure to your secure inbox.",
                    "We have reviewed your loan and waived the late payment charge.",
                    "Your loan application has been reviewed and the decision is in your inbox."],
    },
    "mortgage": {
        "subjects": ["Mortgage payment query", "Remortgage options", "Mortgage overpayment",
                     "Mortgage statement", "Payment holiday request"],
        "bodies": ["my mortgage payment went up by {amount} this month",
                   "my fixed rate ends soon and I want to know my options",
                   "I want to make an overpayment of {amount} on my mortgage",
                   "I have not received my annual mortgage statement",
                   "I lost my job and need a mortgage payment holiday"],
        "topic": "your mortgage",
        "actions": ["A mortgage adviser will call you to go through your options.",
                    "We have recorded your overpayment request and updated your mortgage balance.",
                    "We have sent your mortgage statement to your registered address."],
    },
    "savings": {
        "subjects": ["Savings interest missing", "ISA transfer", "Savings withdrawal",
                     "Fixed saver maturity", "Savings account opening"],
        "bodies": ["I did not receive the interest on my savings account this month",
                   "I want to transfer my ISA from another bank",
                   "I need to withdraw {amount} from my notice savings account",
                   "my fixed saver matured {when} and I do not know where the money went",
                   "I tried to open a savings account but the form failed"],
        "topic": "your savings",
        "actions": ["We have paid the missing interest into your savings account.",
                    "We have started your ISA transfer, which takes up to 15 working days.",
                    "Your savings withdrawal has been processed and will arrive today."],
    },
}  # fmt: skip

PRIORITIES = ["low", "medium", "high", "urgent"]
# Share of tickets per priority: most are routine, few are urgent (as in real queues).
PRIORITY_SHARES = [0.30, 0.40, 0.20, 0.10]

# How severe a product tends to be; tickets are ranked by severity + noise and the top ones get
# the urgent priority, so priority correlates with product without being a function of it.
PRODUCT_SEVERITY = {
    "fraud": 2.0, "transfer": 1.0, "card": 0.8, "online_banking": 0.6, "mortgage": 0.4,
    "loan": 0.3, "account": 0.2, "savings": 0.0,
}  # fmt: skip

# (subject prefixes, body sentences) that carry the priority in the text.
PRIORITY_CUES = {
    "low": (["", "Question: ", "Query - "],
            ["No rush, whenever you have time.", "Just a general question.",
             "It is not urgent."]),
    "medium": (["", "", "Re: "],
               ["Could you look into this please?", "Please let me know what to do.",
                "I would appreciate an answer this week."]),
    "high": (["Second request: ", "Important: ", ""],
             ["This is the second time I am writing about this.",
              "I need this sorted in the next day or two.", "I am getting worried about this."]),
    "urgent": (["URGENT: ", "URGENT - ", "Emergency: "],
               ["Please call me immediately.", "I cannot pay my rent because of this!",
                "I need this fixed today, I have no access to money."]),
}  # fmt: skip

REPLY_PRIORITY_LINES = {
    "low": "There is nothing more you need to do.",
    "medium": "We will update you within 3 working days.",
    "high": "We have prioritised your case and will update you within 24 hours.",
    "urgent": "Your case has been escalated to our specialist team, who will call you today.",
}

# Channel -> how its tickets open; only the slice column, the channel does not change labels.
CHANNELS = {
    "email": "",
    "chat": "[Live chat transcript]\n",
    "phone": "[Call notes by agent]\n",
    "app": "[Sent from the mobile app]\n",
    "branch": "[Logged in branch]\n",
}
CHANNEL_SHARES = [0.40, 0.25, 0.15, 0.15, 0.05]

AGENTS = ["Sam", "Priya", "Tom", "Ana", "Marek", "Joy"]
TEAMS = ["Customer Care", "Card Services", "Payments Team", "Digital Support", "Fraud Team"]
